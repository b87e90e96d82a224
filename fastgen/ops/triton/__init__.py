"""Triton kernels and their launchers, one file per op.

Imported lazily by the ops, on the first call that runs on the ``triton`` backend, so that
``import fastgen`` never imports triton. On CPU tensors they run under the Triton
interpreter, which needs ``TRITON_INTERPRET=1`` before triton is imported.
"""
