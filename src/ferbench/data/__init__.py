"""Dataset ingest: native layouts -> one manifest table (see ferbench.data.manifest)."""
