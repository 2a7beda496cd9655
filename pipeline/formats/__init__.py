"""File formats: DIALS experiment (.expt) and reflection (.refl) files, images, MTZ."""
