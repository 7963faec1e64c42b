"""Secure KVS: a confidential object store whose storage nodes see only ciphertext.

The pipeline, one module per stage: `policy` (what redundancy) → `codec`
(encrypt, then encode into MAC'd fragments) → `placement` (which node holds
which fragment) → `fragments` (the FragmentStore interface and its backends:
`packstore` on a local disk, `node` over HTTP) → `gateway` (quorum writes,
versioned reads, repair) → `api` (the trusted gateway's REST API).
"""
