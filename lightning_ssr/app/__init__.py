"""The experiment app: the ``lightning-ssr`` command and what it needs beside the library (Hydra
configuration, data sets, the model zoo, the LightningModule, recipes, sweep reports, export).

Nothing in the library (``lightning_ssr`` outside this package) imports it: ``import
lightning_ssr`` gives the callback, the methods and the engine without Hydra or data sets."""
