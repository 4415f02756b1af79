"""The open data catalog: CKAN-compatible Action API, datastore, DCAT, standard datasets."""
