"""Tests of `modrec.content`, one file per module. A package, so its file names may
repeat those of other test folders."""
