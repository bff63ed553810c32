"""Training data: preprocessing, dataset, collator and samplers."""
