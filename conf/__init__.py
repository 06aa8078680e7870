"""The Hydra configuration of the ``lightning-ssr`` command.

This directory is ``conf/`` at the top of the repository and is installed as the package
``lightning_ssr.conf`` (setuptools ``package_dir``), so Hydra finds it as
``pkg://lightning_ssr.conf`` from any working directory, in an editable install or a wheel.
"""
