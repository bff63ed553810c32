"""ScienceQA-IMG: answer-letter accuracy over the test split, overall and on image questions."""
