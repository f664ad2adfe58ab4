"""Click models of whole lists: the structured list-effects model, its exact expected clicks and
list search; the learned list-wise reward; classic click models for offline estimates."""
