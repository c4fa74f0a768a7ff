"""Tests of `modrec.data` that need more than one file. A package, so its file names may
repeat those of other test folders."""
