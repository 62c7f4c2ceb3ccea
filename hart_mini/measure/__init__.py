"""How the course measures models, built in notebooks 01, 04 and 09-10: power spectra and PSNR (metrics),
the attribute judge (judge), FD and prompt accuracy with their noise (evaluate).
"""
