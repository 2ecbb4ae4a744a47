"""Apache Beam: a corpus as parallel sources with a dead-letter output (`corpus`) and the encoding pipeline
(`pipeline`). Imports only ground modules and data/."""
