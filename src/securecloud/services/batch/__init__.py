"""Asperathos: deadline-aware batch processing of confidential jobs.

Manager (REST entry point, `manager.py`/`api.py`) → per submission a runner
(`runner.py`) that fills a work queue (`queue.py`: Redis or local), starts
attested workers through an executor (`local_executor.py`, `kubernetes.py`),
samples progress (`monitor.py`) and asks the controller (`controller.py`, a
pure function) how many workers to run, within the enclave memory of the node.
"""
