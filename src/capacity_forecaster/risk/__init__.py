"""Capacity-risk rules as library code: breach probabilities and tiers, utilisation profiles and clusters,
consolidation packing, the risk register and the evaluation of risk flags. The risk_analysis nodes call these.
"""
