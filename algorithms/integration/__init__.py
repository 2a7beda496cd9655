"""Integration of rotation data: profile-model estimation (σb, σm), shoebox geometry,
robust GLM background, summation and 3D profile fitting in the Kabsch reflection frame.

References: Kabsch W. (2010) Acta Cryst. D66, 125–132 and 133–144 (reflection frame, σb/σm,
profiles); Parkhurst J.M. et al. (2016) J. Appl. Cryst. 49, 1912–1921 (GLM background);
Winter G. et al. (2018) Acta Cryst. D74, 85–97 (DIALS).
"""
