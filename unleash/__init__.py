"""unleash: inverse-consistent lung registration and synthetic paired vessel volumes.

The engine of the UnleashRegistration 3D Slicer extension; also a command-line tool (`unleash`)
and a library. It never imports Slicer or any GUI toolkit."""

__version__ = "0.1.0"
