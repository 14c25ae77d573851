"""Arrow schemas, the LanceDB trajectory store, checkpoint store and tracking."""
