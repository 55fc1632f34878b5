"""Builders shared by the test modules (importable as ``helpers``: ``pythonpath = tests`` in setup.cfg).

``commands``: run a command in this process (``call``, ``cli``) or as a process (``run``), tiny YAMLs,
``copy_exp``; ``e2e``: the tiny end-to-end experiment; ``stage_two``: synthetic feature / prediction
sets; ``crossfit``: the synthetic cross-fitted experiment; ``deploy``: a deployable experiment;
``bad_inputs``: hostile inputs and one-line error checks; ``dicom_files`` / ``dicom_fixtures``: DICOM
files of every transfer syntax and broken ones. Session fixtures built from them: ``tests/conftest.py``.
"""
