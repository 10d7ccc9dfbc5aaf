"""Network definitions only: no training loops, no file I/O."""
