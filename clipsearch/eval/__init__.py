"""`clipsearch eval`: retrieval recall and zero-shot accuracy of a model on a dataset with known
answers, measured through the indexer, the search and the tagging module (clipsearch.eval.runner);
datasets in clipsearch.eval.datasets, the arithmetic in clipsearch.eval.metrics."""
