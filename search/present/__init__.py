"""What presents a sweep's results: plot, HTML report, export and predict. Read-only over results."""
