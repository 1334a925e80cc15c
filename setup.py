# All metadata is in pyproject.toml. setuptools cannot read `cffi_modules`
# from there, so this stub's only job is to hand the cffi build to it.
from setuptools import setup

setup(cffi_modules=["build_ffi.py:ffibuilder"])
