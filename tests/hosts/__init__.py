"""Test hosts: build pinned ComfyUI / A1111-family checkouts beside this repository and run the end-to-end matrix.

`python -m tests.hosts --help`; the hosts and their commits are in `specs.py`. No host code is ever committed here:
builders clone it from GitHub or a local mirror into $DMD2_HOSTS (default: `hosts/` beside this repository).
"""
