"""Long-term memory, RAG and session state over Qdrant (see the Memory issue)."""
