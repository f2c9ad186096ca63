"""Training data: image folders and `datasets` sources (parquet, webdataset), the seeded batch order, the data
workers, the bad-data policy, and the Fashion-MNIST folder writer. Used by `training`; needs no model.
"""
