"""unclip.samplers"""
