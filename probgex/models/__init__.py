"""Count models and likelihoods."""
