"""unclip.pipeline"""
