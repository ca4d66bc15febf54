"""The paper's studies on top of the rock statistics (PAPER.md sections 2-4)."""
