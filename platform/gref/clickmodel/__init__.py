"""Click models of whole lists: the structured list-effects model (its exact expected clicks and
list search) shared by the simulator's oracle, the references and the learned list-wise reward
(gref.baselines.clickmodel); classic click models for offline estimates."""
