"""Pure provider parsing: provider frames/files/SDK objects in, raw tick and bar records out. No I/O."""
