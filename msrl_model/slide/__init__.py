"""slide"""
