"""Run records: the model and its transitions (`store`), the authority that writes them for
agents after checking the caller (`service`), and the writers the runtime uses (`client`)."""
