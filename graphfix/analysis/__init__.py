"""What rules read and write graphs with: shapes, the evaluator, walks, broadcasting, builders and edits."""
