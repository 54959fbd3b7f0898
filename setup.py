import re

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "(.+)"', open("refdiff/__init__.py", encoding="utf-8").read()).group(1)

setup(
    name="refdiff",
    version=VERSION,
    description="A NumPy-only reference implementation of guided diffusion, checked against closed forms.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["refdiff", "refdiff.*", "toy_data", "toy_data.*"]),
    install_requires=["numpy>=1.24", "scipy>=1.10", "autograd>=1.6", "matplotlib>=3.8"],
    extras_require={"test": ["pytest>=7", "hypothesis>=6.80"]},
    entry_points={"console_scripts": ["refdiff = refdiff.cli:main"]},
)
