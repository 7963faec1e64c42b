"""Platform services: the KVS, CascaDB, SCBR and Asperathos batch processing."""
