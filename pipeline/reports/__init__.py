"""HTML reports (inline SVG, self-contained)."""
