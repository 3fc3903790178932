"""Views: pure readers of records — the HTML report, the memory gate (check), the accuracy summary."""
