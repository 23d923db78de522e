"""The recipes: training one cell of the study (`cft.recipes.train`) and evaluating a checkpoint
(`cft.recipes.evaluate`). Only recipes see the whole config."""
