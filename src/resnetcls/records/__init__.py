"""What a run and a model leave behind: the model directory, provenance, tracker runs, figures."""
