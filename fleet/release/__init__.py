"""Release side of signed OTA delivery: the TUF repository, its keys, publishing models."""
