"""Reading a model against data: evaluation, the HTML report, ranking unlabelled images."""
