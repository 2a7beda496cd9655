"""Headless views of images and spots, the equivalents of ``dials.image_viewer`` and
``dials.reciprocal_lattice_viewer`` that need no display.

- :mod:`pipeline.views.overlays`: where things fall on the detector, in pixels (resolution rings
  as the exact conic sections of the diffraction cones, the projection of the rotation axis,
  spots shown on an image range).
- :mod:`pipeline.views.detector_png`: one detector image with its overlays as a PNG, pixel for
  pixel aligned with the detector (matplotlib's Agg renderer; no display, no pyplot state).
- :mod:`pipeline.views.lattice_html`: a self-contained interactive 3D page of reciprocal-lattice
  points (inline JavaScript, canvas 2D; opens offline).
"""
