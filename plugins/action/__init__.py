"""Video action recognition: frame CNN + BiGRU encoder, attention decoder naming each action in order."""
