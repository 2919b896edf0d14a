"""Place retrieval: positions, faiss search, Recall@K and pictures of the results."""
