"""Training's parts: the run's configuration (`config`), the train step (`step`), gradient caching
(`gradient_cache`), the optimizers and their schedule (`optimizers`), strategies by name (`distributed`) and a
training model_dir kept consistent (`run_dir`). Imports only ground modules; `training_run` joins them into a run."""
