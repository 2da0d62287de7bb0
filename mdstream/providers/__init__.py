"""Pure parsing of provider wire formats into raw tick records: no I/O, no Faust."""
