"""The paper's rock studies (docs/method.md, sections "Rock Tokens" to "Causal knockout")."""
