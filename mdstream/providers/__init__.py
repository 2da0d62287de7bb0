"""Pure provider parsing: frames, files and SDK objects in; raw tick and bar records out. No I/O."""
