"""Glue between kdimpl's losses and detection libraries' training loops.

Each integration lives in its own module and is imported explicitly
(``from kdimpl.integrations.torchvision import DetectorTap``); importing :mod:`kdimpl` never
imports a detection library.
"""
