"""Results: the row schema, the one DataFrame (``load_results``) and its Pareto front."""
