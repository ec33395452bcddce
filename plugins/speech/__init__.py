"""Speech to text: Listen, Attend and Spell over characters, trained on synthetic speech."""
