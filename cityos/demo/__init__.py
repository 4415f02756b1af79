"""The Sano demo data set: river gauges and shelters to explore the API with."""
